from s4d.cli import main

main()
