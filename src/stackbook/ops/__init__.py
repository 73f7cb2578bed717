"""Operations: the platform health checks the ``runbooks/ops`` runbooks call (``checks``)."""
