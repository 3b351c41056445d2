from imagerec.cli.main import main

main()
