"""``python -m medsaga``: the command line, as torchrun launches it (``torchrun ... -m medsaga finetune``)."""

from cli.main import run

if __name__ == "__main__":
    run()
