"""`python -m stowpay.cli`: the `stowpay` command."""

from . import main

main()
