from triplicate.cli import main

main()
