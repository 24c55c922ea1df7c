from gdzoo.cli import main

main()
