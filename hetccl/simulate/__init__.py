"""``hetccl simulate``: the runtime's own planners and cost model run on a described cluster.

group.py builds, from a topology file and a cost model, the pricers a communicator builds at
creation (flat tuner, topology planner, island pricer) and decides with collectives/decide.py;
costs.py picks the cost model (a tuning file, or the defaults); sweep.py prices every algorithm
per size and says why the runtime's choice wins; report.py prints, compares and plots; cli.py is
the command. See docs/simulate.md.
"""
