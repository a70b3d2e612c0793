# deploy-alerts.sh - deploy.sh's notice settings (e-mail through SMTP, a webhook); sourced by
# deploy.sh, never run. What they mean: docs/operations.md, "Notices"; the settings they set:
# docs/configuration.md (alert_*).
#
# .env receives ALERT_* variables that Compose hands to the pipeline as GLACIER_SYNC_ALERT_*
# (empty: as the pipeline's config file says); the SMTP password and the webhook URL (it may
# carry a token) are the secrets alert_smtp_password and alert_webhook_url, each an empty file
# while unused.

alert_to="" alert_from="" smtp="" smtp_user="" smtp_starttls="" smtp_password_file=""
webhook_file=""
readonly SMTP_PASSWORD_SECRET=/run/secrets/alert_smtp_password
readonly WEBHOOK_SECRET=/run/secrets/alert_webhook_url

# alert_option OPTION VALUE: 0 when OPTION is a notice option (VALUE taken), 1 otherwise.
alert_option() {
    case "$1" in
        --alert-email-to) alert_to=$2 ;;
        --alert-email-from) alert_from=$2 ;;
        --smtp) smtp=$2 ;;
        --smtp-user) smtp_user=$2 ;;
        --smtp-starttls) smtp_starttls=$2 ;;
        --smtp-password-file) smtp_password_file=$2 ;;
        --alert-webhook-url-file) webhook_file=$2 ;;
        *) return 1 ;;
    esac
}

# inherit_alerts: a re-deploy keeps the instance's notice settings unless an option changes one.
inherit_alerts() {
    if [ -z "$alert_to" ]; then
        alert_to=$(deployed_value ALERT_EMAIL_TO | tr -d '[]" ')
    fi
    alert_from=${alert_from:-$(deployed_value ALERT_EMAIL_FROM)}
    if [ -z "$smtp" ] && [ -n "$(deployed_value ALERT_SMTP_HOST)" ]; then
        smtp="$(deployed_value ALERT_SMTP_HOST):$(deployed_value ALERT_SMTP_PORT)"
    fi
    smtp_user=${smtp_user:-$(deployed_value ALERT_SMTP_USER)}
    # An explicit on is kept; off was the default without a login (a later login turns it on).
    if [ -z "$smtp_starttls" ] && [ "$(deployed_value ALERT_SMTP_STARTTLS)" = true ]; then
        smtp_starttls=on
    fi
}

# check_alerts: the notice options agree, each refused in one line naming it (exit 2).
check_alerts() {
    local address
    [ "$alert_to" != off ] || alert_to=""
    [ "$alert_from" != off ] || alert_from=""
    [ "$smtp" != off ] || smtp=""
    smtp_user_off=0
    if [ "$smtp_user" = off ]; then smtp_user="" smtp_user_off=1; fi
    smtp_host="" smtp_port=""
    if [ -n "$smtp" ]; then
        [[ $smtp =~ ^([A-Za-z0-9._-]+):([0-9]{1,5})$ ]] \
            || die "--smtp must be HOST:PORT (e.g. mail.example.org:587) or off, not '$smtp'"
        smtp_host=${BASH_REMATCH[1]} smtp_port=${BASH_REMATCH[2]}
        [ "$smtp_port" -ge 1 ] && [ "$smtp_port" -le 65535 ] \
            || die "--smtp port must be from 1 to 65535, not $smtp_port"
    fi
    local -a addresses=()
    [[ $alert_to$alert_from$smtp_user != *$'\n'* ]] \
        || die "--alert-email-to, --alert-email-from and --smtp-user take one line each"
    [[ -z $alert_to || $alert_to =~ ^[^,]+(,[^,]+)*$ ]] \
        || die "--alert-email-to must be addresses separated by single commas, not '$alert_to'"
    IFS=, read -ra addresses <<< "$alert_to"
    for address in "${addresses[@]}" ${alert_from:+"$alert_from"}; do
        [[ $address =~ ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+$ ]] \
            || die "--alert-email-to/--alert-email-from: '$address' is not an address (name@host: letters, digits and . _ % + -)"
    done
    [[ -z $smtp_user || $smtp_user =~ ^[A-Za-z0-9._@+-]{1,128}$ ]] \
        || die "--smtp-user: use letters, digits and . _ @ + - (at most 128), not '$smtp_user'"
    if [ -n "$alert_to" ] && { [ -z "$smtp" ] || [ -z "$alert_from" ]; }; then
        die "--alert-email-to needs --smtp HOST:PORT and --alert-email-from ADDRESS (or --alert-email-to off)"
    fi
    case "${smtp_starttls:-}" in
        "") smtp_starttls=$([ -n "$smtp_user" ] && echo on || echo off) ;;
        on|off) ;;
        *) die "--smtp-starttls must be on or off, not '$smtp_starttls'" ;;
    esac
    check_smtp_login
    check_webhook_file
}

# check_smtp_login: a login needs its password (given now, or kept in secrets/) and STARTTLS.
check_smtp_login() {
    if [ -n "$smtp_password_file" ]; then
        [ -f "$smtp_password_file" ] && [ -r "$smtp_password_file" ] \
            || die "--smtp-password-file $smtp_password_file is not a readable file"
        [ -n "$(tr -d '[:space:]' < "$smtp_password_file")" ] \
            || die "--smtp-password-file $smtp_password_file is empty; write the SMTP password into it"
    fi
    if [ -z "$smtp_user" ]; then
        [ -z "$smtp_password_file" ] || die "--smtp-password-file needs --smtp-user USER (the login it is the password of)"
        return 0
    fi
    [ -n "$smtp" ] || die "--smtp-user needs --smtp HOST:PORT"
    [ -n "$smtp_password_file" ] || [ -s "$dest/secrets/alert_smtp_password" ] \
        || die "--smtp-user $smtp_user needs --smtp-password-file FILE (the password, kept as a secret)"
    [ "$smtp_starttls" = on ] \
        || die "--smtp-user needs --smtp-starttls on: the password must not cross the network in clear"
}

# check_webhook_file: an http(s) URL without a user or password (never printed: it may hold a
# token).
check_webhook_file() {
    [ -n "$webhook_file" ] && [ "$webhook_file" != off ] || return 0
    [ -f "$webhook_file" ] && [ -r "$webhook_file" ] \
        || die "--alert-webhook-url-file $webhook_file is not a readable file"
    [ "$(grep -c '[^[:space:]]' "$webhook_file")" = 1 ] \
        && grep -qE '^[[:space:]]*https?://[^/@[:space:]]+(/[^[:space:]]*)?[[:space:]]*$' "$webhook_file" \
        || die "--alert-webhook-url-file $webhook_file must hold one line, one http(s) URL without a user or password (put a token in the path or the query)"
}

# write_alert_secrets: the SMTP password and the webhook URL, copied when given, emptied by off,
# kept otherwise (an empty file while unused: Compose mounts every secret it names).
write_alert_secrets() {
    write_optional_secret alert_smtp_password "$([ "$smtp_user_off" = 1 ] && echo off || echo "$smtp_password_file")"
    write_optional_secret alert_webhook_url "$webhook_file"
}

# write_optional_secret NAME FILE|off|"": FILE copied in, off: emptied, "": kept (created empty).
write_optional_secret() {
    local name=$1 source=$2 target=$dest/secrets/$1
    case "$source" in
        off)
            if [ "$dry_run" -eq 1 ]; then
                echo "would: empty secrets/$name (off)"
            else
                [ ! -s "$target" ] || say "secrets/$name: emptied (off)"
                : > "$target"
            fi ;;
        "") [ -e "$target" ] || act touch "$target" ;;
        *) write_secret "$name" --from "$source" ;;
    esac
}

# alert_env: the .env lines of the notice settings.
alert_env() {
    local to_json="" webhook="" starttls=""
    if [ -n "$alert_to" ]; then
        to_json="[\"$(printf '%s' "$alert_to" | sed 's/,/","/g')\"]"
    fi
    if [ "$webhook_file" != off ] && { [ -n "$webhook_file" ] || [ -s "$dest/secrets/alert_webhook_url" ]; }; then
        webhook=$WEBHOOK_SECRET
    fi
    if [ -n "$smtp_host" ]; then
        starttls=$([ "$smtp_starttls" = on ] && echo true || echo false)
    fi
    cat <<ENV
# Notices by e-mail to these addresses, a JSON list (deploy.sh --alert-email-to; empty: as the
# pipeline's config file says, like every ALERT_ variable below).
ALERT_EMAIL_TO=${to_json}
# The notices' sender address (deploy.sh --alert-email-from).
ALERT_EMAIL_FROM=${alert_from}
# The mail server (deploy.sh --smtp HOST:PORT).
ALERT_SMTP_HOST=${smtp_host}
# The mail server's port.
ALERT_SMTP_PORT=${smtp_port}
# STARTTLS before anything is sent (deploy.sh --smtp-starttls on|off).
ALERT_SMTP_STARTTLS=${starttls}
# The mail server's login (deploy.sh --smtp-user; its password: secrets/alert_smtp_password).
ALERT_SMTP_USER=${smtp_user}
# Where the containers read the SMTP password (set when there is a login).
ALERT_SMTP_PASSWORD_FILE=${smtp_user:+$SMTP_PASSWORD_SECRET}
# Where the containers read the webhook's URL, a secret (deploy.sh --alert-webhook-url-file).
ALERT_WEBHOOK_URL_FILE=${webhook}
ENV
}
