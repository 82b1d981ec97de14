from lambdaflow.cli import main

main()
