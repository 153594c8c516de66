"""The parts of the marketer report (`sendwise report`): the site and its sections.

`training.report` assembles the site from a list of section builders; each module here builds one section
(`drivers`, `segments`, `send_time`, `offers`, `model_card`) from what the pipeline left in the home, and
`site` renders the sections into an offline HTML site (Jinja2, autoescaped) with `plots`' charts beside them.
"""
