"""What PyStacker gives browsers: the chat app and the JavaScript SDK (served by meta), the files behind
every service's `/docs`, and the CORS rules that let a page on one origin call the other services.

The files are package data under `static/`, so a `pip install` serves them: there is no build step
(docs/web.md says why).
"""
