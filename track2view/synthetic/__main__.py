import sys

from track2view.synthetic.generate import main

if __name__ == "__main__":
    sys.exit(main())
