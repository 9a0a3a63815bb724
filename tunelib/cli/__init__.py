"""The `tune` command. One module per verb; none imports torch until the verb runs."""
