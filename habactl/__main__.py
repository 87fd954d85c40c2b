"""`python -m habactl ...`: the same command line as `habactl ...`."""

from habactl.cli.main import main

if __name__ == "__main__":
    main()
