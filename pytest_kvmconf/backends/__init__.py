"""The bundled backends: reference (the executable model), threaded, kvm."""
