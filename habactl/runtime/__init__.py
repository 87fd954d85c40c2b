"""Where and how a command runs: the atomic file writer every output goes through
(``atomic``), the device and the seeded random streams (``device``), and one command on
N processes under ``torchrun`` (``distributed``)."""
