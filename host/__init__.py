"""rkdeploy host side: recipes → plans → artifacts → boards → tables."""

__version__ = "0.1.0"
