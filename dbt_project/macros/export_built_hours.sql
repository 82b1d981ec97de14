{% macro export_built_hours(ds, until, path) %}
    {#- Publishing reads the warehouse through dbt, its only user: the day's built hours to one Parquet file. -#}
    {% set export %}
        copy (
            select *
            from {{ ref('fct_hourly_metrics') }}
            where event_date = cast('{{ checked_day(ds, "ds") }}' as date)
              and event_hour < cast('{{ checked_instant(until, "until") }}' as timestamp)
            order by event_hour, country
        ) to '{{ path | replace("'", "''") }}' (format parquet, compression zstd)
    {% endset %}
    {% do run_query(export) %}
{% endmacro %}
