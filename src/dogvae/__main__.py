"""`python -m dogvae` (and `torchrun -m dogvae`) runs the command line."""

from dogvae.cli import main

raise SystemExit(main())
