"""The core: the option declarations, the scheduler contract, the step engine, array ops."""
