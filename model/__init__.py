"""The networks of Fig. 3 (teacher, bottleneck, student, generation modules) in mrkd.py, the
RD family's differences in methods.py, training and scoring in engine.py."""
