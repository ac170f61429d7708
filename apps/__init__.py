"""The applications: the `tokenforge` command (cli/), the development launcher
(dev.py), the operator actions they share (admin.py), the bundled mock upstream and the
research assistant. They use the kernel (tokenforge/) and reach services through their
clients; no service imports them."""
