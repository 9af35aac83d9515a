"""`python -m bbucli ...` == `bbu ...` (also what `deepspeed -m` and `torchrun -m` run)."""

from bbucli.cli.app import app

if __name__ == "__main__":
    app(prog_name="bbu")
