"""``python -m torchnf`` (and ``torchrun -m torchnf``): the ``torchnf`` command."""

from torchnf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
