"""The fault suite: real servers under bounded load, one injected fault at a time.

``python -m faults.run`` (``make faults``) runs every scenario and writes the
figures into docs/reliability.md; ``python -m faults.soak`` (``make soak``)
runs ten minutes of mixed load with faults and samples the servers' memory.
``tests/test_faults.py`` runs the same scenarios in a short form under pytest.

Modules:

- :mod:`faults.services`: an own redis-server, a delaying TCP proxy in front
  of it, an own throwaway PostgreSQL cluster, process helpers (RSS, who owns a
  socket);
- :mod:`faults.cluster`: ``manage.py serve`` and gunicorn gevent workers sharing
  that Redis and PostgreSQL, in front of the fake upstream of the tests;
- :mod:`faults.load`: the load generator and the checks made on every answer;
- :mod:`faults.scenarios`: the scenarios;
- :mod:`faults.report`: tables for docs/reliability.md.
"""
