"""The lab: experiments built on the lecture (model.py, train.py, sample.py, prepare_data.py).

Each module runs as `python -m lab.NAME --help`. The lab imports the lecture; the lecture
never imports the lab.
"""
