"""The lab: a whole deployment on one machine against the simulated Discord (:mod:`.rehearsal`), the demo
built on it (:mod:`.demo`, ``letsfrag demo``) and ``letsfrag bench`` (:mod:`.bench`, the checkout's benchmarks).
The demo bot and the sample configs it runs are packaged data in :mod:`letsfrag.samples`."""
