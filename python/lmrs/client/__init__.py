"""Clients of a running lmrs server.

    rest.py        the HTTP client of the REST API (/generate streaming, stop, end session, model name)
    api_client.py  `lmrs serve api_client URL`: a terminal chat
    webui.py       `lmrs serve gradio URL`: a browser chat (needs `pip install lmrs[webui]`)
"""
