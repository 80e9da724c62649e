from edge_outbox.cli import main

main()
