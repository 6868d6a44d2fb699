"""Helpers shared by the tests, loaded as pytest plugins by ``tests/conftest.py`` (so their
fixtures are found by name) and imported by the tests for everything else:

- ``wait``: ``wait_until``, the one poll with a timeout every waiting helper is built on;
- ``ports``: free loopback ports (one, or a range) and a listener that holds a port;
- ``processes``: the process tree, through psutil (children, descendants, alive, command line, uid);
- ``repository``: the ``server`` fixture (a server with client web01 and locations usb and nas),
  restic, and helpers on repository files;
- ``server``: ``Site``, a server under real supervision, with the CLI in-process;
- ``syncd``: the daemon as a process or in-process, its ``daemons`` fixture, a notification sink;
- ``remote``: real sshd, S3 and REST servers on loopback (session fixtures ``sshd``, ``s3_server``,
  ``rest_server``) and their locations' TOML.
"""
