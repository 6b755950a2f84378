from pystacker.cli import main

main()
