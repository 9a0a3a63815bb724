"""Builders the tests share: tiny model folders, tiny tokenizers, tiny datasets.

Everything here is made on the spot from fixed seeds; nothing is downloaded.
"""
