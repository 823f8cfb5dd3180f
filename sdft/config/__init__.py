"""The command line of ``sdft fit`` / ``validate`` / ``test`` / ``predict``, checked before the heavy imports.

:mod:`sdft.config.extraction` writes ``schema.json`` from sdft's LightningCLI (the options of every command and of
every class a config can name); :mod:`sdft.config.preflight` reads it to answer ``--help`` and ``--print_config`` and
to refuse a mistaken config in one line before torch, Lightning and diffusers are imported. The real parser still
runs afterwards, so the schema only ever refuses what that parser would refuse.
"""
