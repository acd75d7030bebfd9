from hayai.cli.main import main

main()
