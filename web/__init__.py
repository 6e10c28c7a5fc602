"""The browser app as package data: installed as ``cordsnet.webapp`` (see ``cordsnet.cli.web``).

This folder is the static page (``index.html``, ``app.mjs``, ``cordsnet.mjs``, ``style.css``,
``digits.json``) and onnxruntime-web's vendored files (``vendor/ort``); there is no Python here.
"""
