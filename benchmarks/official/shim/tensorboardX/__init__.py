"""A no-op stand-in for tensorboardX's SummaryWriter (benchmarks/official/README.md): the official
script logs scalars to it; skipping them only makes that script faster."""


class SummaryWriter:
    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass
