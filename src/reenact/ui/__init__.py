"""`reenact ui`: a Gradio web app over the same Python API as the command line.

server.py checks the access settings and launches; app.py builds the page from one module per
tab (subjects.py, make.py, verify.py, models.py); jobs.py runs the work one job at a time and
turns errors into the CLI's one-line message.
"""
