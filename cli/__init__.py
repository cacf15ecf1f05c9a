"""medsaga's command line: Typer commands that parse options and call the library."""
