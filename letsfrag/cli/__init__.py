"""The ``letsfrag`` command line: one parser (:mod:`.main`, the console script's entry point) and a module per
command family, each imported only when its command runs: ``run`` (:mod:`.local`, with :mod:`.embedded` and
:mod:`.progress`), ``status`` (:mod:`.status`), ``restart``/``drain``/``rebalance``/``reshard``
(:mod:`.operator`, sent through :mod:`.control`, which the dashboard uses too), ``logs`` (:mod:`.logtail`) and
``completion`` (:mod:`.completion`); :mod:`.connect` turns a command's arguments into a Redis connection."""
