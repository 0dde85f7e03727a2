"""The CRI runtime: runtime.v1 RuntimeService and ImageService servers driving runc and conmon."""
