from qabridge.cli import main

main()
