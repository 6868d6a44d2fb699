"""The runit service tree: one supervised unit per client (its REST endpoint and its watcher).

layout.py says where things live, scripts.py what the generated files say,
tree.py reconciles the tree with the configuration, runit.py reads runsv's state
and sends sv commands, ports.py allocates the clients' ports.
"""
