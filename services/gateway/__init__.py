"""gateway: the HTTP front; orchestrates one request; holds no money, prices or orders."""
