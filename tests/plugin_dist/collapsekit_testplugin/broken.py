"""A plugin module that fails to import, so that load failures can be tested."""
raise ImportError("collapsekit_testplugin.broken fails to import on purpose (missing dependency 'nonexistent')")
