"""``python -m mpcli`` (used by ``torchrun -m mpcli meta-train``)."""

from mpcli.cli import main

if __name__ == "__main__":
    main()
