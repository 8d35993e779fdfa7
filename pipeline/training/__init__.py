"""Training and evaluation: protocols (CD6ME, LOSO), metrics, the shared trainer, the method
registry, the baselines, and the runner that writes ``metrics/<method>*`` and ``models/<method>/``.
"""
