"""Watching trees: kernel events in, "this path may have new content" out."""
