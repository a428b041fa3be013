from pooledfetch.cli import main

main()
