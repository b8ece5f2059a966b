"""Running the federation across processes and machines.

``calls`` and ``codec`` turn a coordinator's compute closure into data a site
can run (never pickle); ``flower_*`` carry rounds over Flower (``pip install
securefed[flower]``): the coordinator's engine runs inside a Flower
``ServerApp``, each site's ``Site`` inside a ``ClientApp`` on its SuperNode.
Importing this package does not import Flower.
"""
