"""Invoking functions from outside a mapping: function URLs (SPEC section 13)."""
