"""The tests' shared helpers (``tests/`` is on ``sys.path`` through its ``conftest.py``):

* :mod:`helpers.cli` -- the ``itkm`` command in this process (``cli_inproc``) or as a real
  subprocess (``run_cli``, ``spawn_cli``), and the one-line answer to a user's mistake;
* :mod:`helpers.workspaces` -- ``copy_ws`` and small workspace builders;
* :mod:`helpers.images` -- image files and bytes, valid, odd and hostile;
* :mod:`helpers.reliability` -- what must hold of a workspace after a kill or a fault;
* :mod:`helpers.app` -- the app tests' tools (imports Qt: only the app tests use it).
"""
