// The app's words, English and French, from this one catalogue. `t(key, args)` fills `{name}`
// placeholders. A key missing in one language fails the type check, not the canvasser.

export const LANGS = ['en', 'fr'] as const;
export type Lang = (typeof LANGS)[number];

const M = {
  app_name: { en: 'tally', fr: 'tally' },
  loading: { en: 'Opening…', fr: 'Ouverture…' },
  language: { en: 'Français', fr: 'English' },
  language_label: { en: 'Language', fr: 'Langue' },

  // Enrolling
  enroll_title: { en: 'Join the campaign', fr: 'Rejoindre la campagne' },
  enroll_intro: {
    en: 'Your organizer gave you an invite (a QR code). This phone will collect signatures for the campaign, even with no signal.',
    fr: 'Votre organisatrice ou organisateur vous a donné une invitation (un code QR). Ce téléphone recueillera des signatures pour la campagne, même sans réseau.',
  },
  enroll_no_invite: {
    en: 'Open this app from the invite’s QR code, or paste the invite link or text here.',
    fr: 'Ouvrez cette appli à partir du code QR de l’invitation, ou collez ici le lien ou le texte de l’invitation.',
  },
  enroll_paste: { en: 'Invite link or text', fr: 'Lien ou texte de l’invitation' },
  enroll_read: { en: 'Use this invite', fr: 'Utiliser cette invitation' },
  enroll_bad_invite: {
    en: 'This is not a tally invite ({detail}). Ask your organizer for a new QR code.',
    fr: 'Ce n’est pas une invitation tally ({detail}). Demandez un nouveau code QR.',
  },
  enroll_old_invite: {
    en: 'This invite is for a newer version of the app (version {v}). Reload the page, or ask your organizer.',
    fr: 'Cette invitation est pour une version plus récente de l’appli (version {v}). Rechargez la page ou demandez de l’aide.',
  },
  enroll_code: { en: 'One-time code', fr: 'Code à usage unique' },
  enroll_server: { en: 'Server', fr: 'Serveur' },
  enroll_other_server: {
    en: 'This invite names another server ({server}); this app will enroll with the server it was opened from ({here}).',
    fr: 'Cette invitation nomme un autre serveur ({server}) ; l’appli s’inscrira auprès du serveur qui l’a ouverte ({here}).',
  },
  phone_name: { en: 'A name for this phone (organizers see it)', fr: 'Un nom pour ce téléphone (visible par les organisateurs)' },
  phone_name_hint: { en: 'For example: Amina’s phone', fr: 'Par exemple : téléphone d’Amina' },
  enroll_button: { en: 'Enroll this phone', fr: 'Inscrire ce téléphone' },
  enrolling: { en: 'Enrolling…', fr: 'Inscription…' },
  enroll_offline: {
    en: 'No connection to the server: enrolling needs signal once. Try again when you are online.',
    fr: 'Pas de connexion au serveur : l’inscription demande du réseau une fois. Réessayez en ligne.',
  },
  enroll_refused: { en: 'The server refused the invite: {detail}', fr: 'Le serveur a refusé l’invitation : {detail}' },
  enroll_wrong_campaign: {
    en: 'The server enrolled this phone in another campaign ({detail}) than the invite names. Ask your organizer.',
    fr: 'Le serveur a inscrit ce téléphone dans une autre campagne ({detail}) que celle de l’invitation. Demandez de l’aide.',
  },
  other_campaign: {
    en: 'This phone already collects for another campaign ({detail}). One phone collects for one campaign.',
    fr: 'Ce téléphone recueille déjà pour une autre campagne ({detail}). Un téléphone recueille pour une seule campagne.',
  },
  already_enrolled: {
    en: 'This phone is already enrolled as “{name}”. Enroll again with this invite? Records waiting on this phone are kept and sent with the new enrollment.',
    fr: 'Ce téléphone est déjà inscrit comme « {name} ». L’inscrire de nouveau avec cette invitation ? Les fiches en attente sont gardées et envoyées avec la nouvelle inscription.',
  },
  enroll_again: { en: 'Enroll again', fr: 'Inscrire de nouveau' },
  keep_enrollment: { en: 'Keep the current enrollment', fr: 'Garder l’inscription actuelle' },

  // Home
  petition: { en: 'Petition', fr: 'Pétition' },
  addressee: { en: 'To {who}', fr: 'À l’attention de : {who}' },
  team_total: { en: 'Team total', fr: 'Total de l’équipe' },
  team_total_line: {
    en: '{signatures} · {unique} people · goal {goal}',
    fr: '{signatures} · {unique} personnes · objectif {goal}',
  },
  n_signatures: { en: '{n} signatures', fr: '{n} signatures' },
  n_signatures_one: { en: '{n} signature', fr: '{n} signature' },
  n_checkins: { en: '{n} check-ins', fr: '{n} présences' },
  n_checkins_one: { en: '{n} check-in', fr: '{n} présence' },
  team_total_as_of: { en: 'as of {when}', fr: 'au {when}' },
  team_total_none: { en: 'No team total yet: it arrives with the next sync.', fr: 'Pas encore de total d’équipe : il arrivera à la prochaine synchronisation.' },
  take_signature: { en: 'Take a signature', fr: 'Recueillir une signature' },
  check_in: { en: 'Check someone in', fr: 'Inscrire une présence' },
  records: { en: 'Records on this phone', fr: 'Fiches sur ce téléphone' },
  settings: { en: 'Settings', fr: 'Réglages' },
  back: { en: 'Back', fr: 'Retour' },

  // Safety banner
  not_safe: {
    en: '{n} not yet safe on the server',
    fr: '{n} pas encore en sécurité sur le serveur',
  },
  not_safe_detail: {
    en: '{signatures}, {checkins} only on this phone: sent by themselves when there is signal.',
    fr: '{signatures}, {checkins} seulement sur ce téléphone : envoyées toutes seules dès qu’il y a du réseau.',
  },
  not_safe_unkeyed: {
    en: 'On the server but not yet their keys (which let organizers open them): {signatures}. The keys go with the next sync.',
    fr: 'Sur le serveur mais pas encore leurs clés (qui permettent de les ouvrir) : {signatures}. Les clés partent à la prochaine synchronisation.',
  },
  all_safe: { en: 'Everything is safe on the server', fr: 'Tout est en sécurité sur le serveur' },
  all_safe_detail: {
    en: '{signatures}, {checkins} taken on this phone.',
    fr: '{signatures}, {checkins} recueillies sur ce téléphone.',
  },
  set_aside_count: {
    en: '{n} records refused by the server and set aside: see the records.',
    fr: '{n} fiches refusées par le serveur et mises de côté : voir les fiches.',
  },
  set_aside_count_one: {
    en: '1 record refused by the server and set aside: see the records.',
    fr: '1 fiche refusée par le serveur et mise de côté : voir les fiches.',
  },
  sync_now: { en: 'Sync now', fr: 'Synchroniser' },
  link_offline: { en: 'No signal: records are kept on this phone.', fr: 'Pas de réseau : les fiches restent sur ce téléphone.' },
  link_connecting: { en: 'Connecting to the server…', fr: 'Connexion au serveur…' },
  link_connected: { en: 'Connected.', fr: 'Connecté.' },
  link_waiting: { en: 'The server is not answering; trying again in {s} s.', fr: 'Le serveur ne répond pas ; nouvel essai dans {s} s.' },
  link_stopped: { en: 'Not syncing.', fr: 'Synchronisation arrêtée.' },
  last_safe: { en: 'Last sent: {when}', fr: 'Dernier envoi : {when}' },
  server_error: { en: 'The server said: {detail}', fr: 'Le serveur a répondu : {detail}' },
  token_refused: {
    en: 'The server no longer accepts this phone (its enrollment was revoked or expired). {n} records are waiting: enroll again with a new invite from your organizer; they will be kept and sent.',
    fr: 'Le serveur n’accepte plus ce téléphone (inscription révoquée ou expirée). {n} fiches attendent : réinscrivez-le avec une nouvelle invitation ; elles seront gardées et envoyées.',
  },
  not_persisted: {
    en: 'This browser may delete what is stored on this phone if space runs low. Add this app to your home screen (install it) and sync often.',
    fr: 'Ce navigateur peut effacer ce qui est stocké sur ce téléphone s’il manque d’espace. Ajoutez l’appli à l’écran d’accueil (installez-la) et synchronisez souvent.',
  },
  persisted: { en: 'The browser keeps this phone’s records even when space runs low.', fr: 'Le navigateur garde les fiches de ce téléphone même s’il manque d’espace.' },
  campaign_unavailable: {
    en: 'The server does not share the campaign with this phone: ask your organizer to check its enrollment.',
    fr: 'Le serveur ne partage pas la campagne avec ce téléphone : demandez de vérifier son inscription.',
  },
  waiting_campaign: {
    en: 'Waiting for the campaign from the server (it needs signal once).',
    fr: 'En attente de la campagne du serveur (il faut du réseau une fois).',
  },
  no_recipients: {
    en: 'The campaign has no organizer key to seal signers’ details to: an organizer must add one before signatures can be taken.',
    fr: 'La campagne n’a pas de clé d’organisateur pour sceller les coordonnées : il faut en ajouter une avant de recueillir des signatures.',
  },
  insecure: {
    en: 'This page was opened over plain http from another machine: a phone keeps signatures safely only over https (or on localhost). Ask the organizer for the https address (docs/operations.md, “The canvassers’ app”).',
    fr: 'Cette page a été ouverte en http simple depuis une autre machine : un téléphone ne garde les signatures en sécurité qu’en https (ou sur localhost). Demandez l’adresse https (docs/operations.md, « The canvassers’ app »).',
  },
  other_tab: {
    en: 'tally is open in another tab or window. Close it to use this one.',
    fr: 'tally est ouvert dans un autre onglet ou une autre fenêtre. Fermez-le pour utiliser celui-ci.',
  },

  // Sign
  sign_title: { en: 'Signature', fr: 'Signature' },
  f_name: { en: 'Full name', fr: 'Nom complet' },
  f_postal_code: { en: 'Postal code', fr: 'Code postal' },
  f_city: { en: 'City', fr: 'Ville' },
  f_riding: { en: 'Riding (if known)', fr: 'Circonscription (si connue)' },
  f_email: { en: 'Email (optional)', fr: 'Courriel (facultatif)' },
  f_phone: { en: 'Phone (optional)', fr: 'Téléphone (facultatif)' },
  f_street: { en: 'Street address (optional)', fr: 'Adresse (facultatif)' },
  f_consent: { en: 'They agree to be contacted by the campaign', fr: 'La personne accepte d’être contactée par la campagne' },
  f_event: { en: 'Event', fr: 'Événement' },
  f_no_event: { en: 'No event', fr: 'Aucun événement' },
  f_walk_in: { en: 'Walk-in (not registered before)', fr: 'Sans inscription préalable' },
  save_signature: { en: 'Save the signature', fr: 'Enregistrer la signature' },
  save_checkin: { en: 'Check in', fr: 'Inscrire la présence' },
  saving: { en: 'Saving…', fr: 'Enregistrement…' },
  saved_signature: {
    en: 'Saved on this phone: {name}. It will be sent to the server by itself.',
    fr: 'Enregistrée sur ce téléphone : {name}. Elle sera envoyée au serveur toute seule.',
  },
  saved_checkin: {
    en: 'Checked in: {name} ({event}). Saved on this phone.',
    fr: 'Présence inscrite : {name} ({event}). Enregistrée sur ce téléphone.',
  },
  save_failed: {
    en: 'Not saved: {detail}. Nothing was written; try again.',
    fr: 'Non enregistrée : {detail}. Rien n’a été écrit ; réessayez.',
  },
  checkin_title: { en: 'Check-in', fr: 'Présence' },
  checkin_no_events: {
    en: 'The campaign has no event yet: an organizer adds events before check-ins.',
    fr: 'La campagne n’a pas encore d’événement : il faut en ajouter avant d’inscrire des présences.',
  },
  sealed_note: {
    en: 'Name, email, phone, street and postal code are sealed on this phone: only the campaign’s organizers can open them.',
    fr: 'Le nom, le courriel, le téléphone, l’adresse et le code postal sont scellés sur ce téléphone : seuls les organisateurs de la campagne peuvent les ouvrir.',
  },

  // Form refusals: {field} is the field's label.
  r_required: { en: '{field}: this field is required.', fr: '{field} : ce champ est obligatoire.' },
  r_too_long: { en: '{field}: too long ({bytes} bytes, at most {max}).', fr: '{field} : trop long ({bytes} octets, au plus {max}).' },
  r_control: {
    en: '{field}: no line breaks or tabs, please (one line).',
    fr: '{field} : pas de retour à la ligne ni de tabulation (une seule ligne).',
  },
  r_postal_too_long: {
    en: '{field}: a Canadian postal code is 6 letters and digits like “M5V 2T6”.',
    fr: '{field} : un code postal canadien a 6 lettres et chiffres, comme « H2X 1Y4 ».',
  },
  r_postal_first_letter: {
    en: '{field}: “{input}” starts with {letter}; no postal code starts with D, F, I, O, Q, U, W or Z. Check the first letter.',
    fr: '{field} : « {input} » commence par {letter} ; aucun code postal ne commence par D, F, I, O, Q, U, W ou Z. Vérifiez la première lettre.',
  },
  r_postal_letter: {
    en: '{field}: “{input}” has the letter {letter}; postal codes never use D, F, I, O, Q or U (O is often a mistyped 0).',
    fr: '{field} : « {input} » contient la lettre {letter} ; les codes postaux n’utilisent jamais D, F, I, O, Q ni U (O est souvent un 0 mal tapé).',
  },
  r_postal_shape: {
    en: '{field}: “{input}” is not a Canadian postal code: letter-digit-letter digit-letter-digit, like “M5V 2T6”.',
    fr: '{field} : « {input} » n’est pas un code postal canadien : lettre-chiffre-lettre chiffre-lettre-chiffre, comme « H2X 1Y4 ».',
  },
  r_email: {
    en: '{field}: “{input}” is not an email address (name@example.org); or leave it empty.',
    fr: '{field} : « {input} » n’est pas une adresse courriel (nom@exemple.org) ; ou laissez vide.',
  },
  r_phone: {
    en: '{field}: “{input}” is not a phone number (7 to 15 digits); or leave it empty.',
    fr: '{field} : « {input} » n’est pas un numéro de téléphone (7 à 15 chiffres) ; ou laissez vide.',
  },
  r_event: {
    en: '{field}: “{input}” is not an event of this campaign (known: {known}).',
    fr: '{field} : « {input} » n’est pas un événement de la campagne (connus : {known}).',
  },
  not_enrolled: { en: 'This phone is not enrolled yet.', fr: 'Ce téléphone n’est pas encore inscrit.' },
  loading_docs: { en: 'The phone is still opening its records; try again in a moment.', fr: 'Le téléphone ouvre encore ses fiches ; réessayez dans un instant.' },
  write_failed: { en: 'the phone could not write it ({detail})', fr: 'le téléphone n’a pas pu l’écrire ({detail})' },

  // Records
  records_pending: { en: 'Not yet safe', fr: 'Pas encore en sécurité' },
  records_refused: { en: 'Refused by the server, set aside', fr: 'Refusées par le serveur, mises de côté' },
  records_safe: { en: 'Safe on the server', fr: 'En sécurité sur le serveur' },
  records_none: { en: 'Nothing yet.', fr: 'Rien pour l’instant.' },
  kind_signature: { en: 'Signature', fr: 'Signature' },
  kind_checkin: { en: 'Check-in', fr: 'Présence' },
  taken_at: { en: 'taken {when}', fr: 'recueillie le {when}' },
  safe_no_name: {
    en: 'Once a record is safe on the server, its name is removed from this phone.',
    fr: 'Une fois une fiche en sécurité sur le serveur, son nom est retiré du téléphone.',
  },
  refused_reason: { en: 'The server’s reason: {reason}', fr: 'Raison du serveur : {reason}' },
  key_waiting: {
    en: 'On the server; its key (which lets organizers open it) is not yet: it goes with the next sync.',
    fr: 'Sur le serveur ; sa clé (qui permet aux organisateurs de l’ouvrir) pas encore : elle part à la prochaine synchronisation.',
  },
  key_refused: {
    en: 'The server refused its key: {reason}. The key stays on this phone and is sent again; tell an organizer.',
    fr: 'Le serveur a refusé sa clé : {reason}. La clé reste sur ce téléphone et sera renvoyée ; prévenez une organisatrice ou un organisateur.',
  },
  record_erased: { en: 'Erased by an organizer.', fr: 'Effacée par une organisatrice ou un organisateur.' },
  key_upload_failed: {
    en: 'Sending the records’ keys failed: {detail}. They stay on this phone and are sent again.',
    fr: 'L’envoi des clés des fiches a échoué : {detail}. Elles restent sur ce téléphone et seront renvoyées.',
  },
  refused_note: {
    en: 'This record is kept on the phone, sealed, and not counted. The others were sent again.',
    fr: 'Cette fiche est gardée sur le téléphone, scellée, et n’est pas comptée. Les autres ont été renvoyées.',
  },
  forget_name: { en: 'Remove the name from this phone', fr: 'Retirer le nom du téléphone' },
  safe_more: { en: '…and {n} more safe records.', fr: '…et {n} autres fiches en sécurité.' },
  chain_title: { en: 'Collections (for organizers)', fr: 'Collections (pour les organisateurs)' },
  chain_state_current: { en: 'current', fr: 'en cours' },
  chain_state_closed: { en: 'closed', fr: 'close' },
  chain_state_refused: { en: 'refused', fr: 'refusée' },
  chain_state_retired: { en: 'retired', fr: 'retirée' },

  // Settings
  device: { en: 'This phone', fr: 'Ce téléphone' },
  device_line: { en: '“{name}” · device {id}', fr: '« {name} » · appareil {id}' },
  storage: { en: 'Storage', fr: 'Stockage' },
  ask_persist: { en: 'Ask the browser to keep the records', fr: 'Demander au navigateur de garder les fiches' },
  install_hint: {
    en: 'To use tally like an app, add it to your home screen from the browser’s menu. It opens with no signal.',
    fr: 'Pour utiliser tally comme une appli, ajoutez-la à l’écran d’accueil depuis le menu du navigateur. Elle s’ouvre sans réseau.',
  },
  reenroll_title: { en: 'Enroll again', fr: 'Inscrire de nouveau' },
  reenroll_hint: {
    en: 'If the organizer gave you a new invite (this phone’s enrollment was revoked), open its QR code, or paste it here.',
    fr: 'Si l’on vous a donné une nouvelle invitation (l’inscription du téléphone a été révoquée), ouvrez son code QR ou collez-la ici.',
  },
} as const satisfies Record<string, Record<Lang, string>>;

export type Key = keyof typeof M;

let current: Lang = pick();

function pick(): Lang {
  try {
    const saved = localStorage.getItem('tally-lang');
    if (saved === 'en' || saved === 'fr') return saved;
  } catch {
    // No storage: the browser's language.
  }
  return (navigator.languages ?? [navigator.language]).some((l) => l.toLowerCase().startsWith('fr')) ? 'fr' : 'en';
}

export function lang(): Lang {
  return current;
}

export function setLang(l: Lang): void {
  current = l;
  try {
    localStorage.setItem('tally-lang', l);
  } catch {
    // Kept for this page only.
  }
  document.documentElement.lang = l;
}

/** The words for `key` in the current language, with `{name}` placeholders filled. */
export function t(key: Key, args: Record<string, string | number> = {}): string {
  return M[key][current].replace(/\{(\w+)\}/g, (whole, name: string) => (name in args ? String(args[name]) : whole));
}

/** A time for people, in the current language. */
export function when(ms: number): string {
  const d = new Date(ms);
  const locale = current === 'fr' ? 'fr-CA' : 'en-CA';
  if (d.toDateString() === new Date().toDateString()) return d.toLocaleTimeString(locale, { timeStyle: 'short' });
  return d.toLocaleString(locale, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A number for people. */
export function count(n: number): string {
  return n.toLocaleString(current === 'fr' ? 'fr-CA' : 'en-CA');
}
