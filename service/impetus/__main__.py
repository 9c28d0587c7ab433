from impetus.cli.main import main

main()
