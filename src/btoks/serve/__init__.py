"""Serving: FAISS indexes over folders of media (``index``), an HTTP server (``app``) and their CLI (``cli``).

Submodules are imported on use so ``import btoks.serve.index`` does not pull in FastAPI and vice versa.
"""
